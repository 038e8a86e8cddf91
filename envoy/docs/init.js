// Starts Swagger UI on the OpenAPI description of this mesh (same origin).
// "Authorize" takes a bearer token (`agentmesh token --tenant acme` under make dev);
// it is kept for the page's life only, never stored.
window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    docExpansion: "list",
    defaultModelsExpandDepth: 0,
    displayOperationId: true,
    displayRequestDuration: true,
    filter: true,
    tryItOutEnabled: false,
    persistAuthorization: false,
    // Every call made from the page carries a request id the logs can be searched by.
    requestInterceptor: function (request) {
      if (!request.headers["x-request-id"] && window.crypto && crypto.randomUUID) {
        request.headers["x-request-id"] = crypto.randomUUID();
      }
      return request;
    },
  });
};
