"""QueueNet HTTP clients. They speak HTTP only and import nothing from app/worker/protocol."""
