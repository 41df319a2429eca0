"""Task- and connection-owning structures: the connection pool and the priority batch queue."""
