"""Operations as code: the Grafana dashboards of the mesh (``dashboards``).

The Prometheus recording and alert rules live beside the generated dashboards in
``observability/`` at the repository root (docs/adr/0032).
"""
