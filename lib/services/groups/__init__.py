"""Group chats (PROTOCOL §13): membership replay and sync planning (pure), the frame channel, the service."""
