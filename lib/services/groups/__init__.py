"""Group chats (PROTOCOL §13): membership replay, sync planning, the frame channel, the service."""
