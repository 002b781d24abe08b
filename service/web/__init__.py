"""The HTTP/JSON API and web console, served beside gRPC by the same process and core objects."""
