"""The speed layer: Structured Streaming views, online scoring and alerts."""
