"""The SuperChat server: transport, sessions, handlers and background jobs."""
