"""Threads, messages and attachments (tenant schema). Built by the chat issue."""
