"""SQL of the Conductor's schema; every function takes the connection, then the tenant."""
