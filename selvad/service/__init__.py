"""The service: the main loop, event and request handling, sd_notify."""
