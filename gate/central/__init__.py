"""Reference central tools: server software that talks to the gates. The device never imports this package."""
