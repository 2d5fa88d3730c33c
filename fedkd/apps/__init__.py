"""Thin Flower glue: the ServerApp and ClientApp, and the round driver that moves messages."""
