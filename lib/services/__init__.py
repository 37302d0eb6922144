"""The use cases under the API: contacts, messaging, file transfer. They use the network layer,
the store and the crypto below them, never the API above."""
