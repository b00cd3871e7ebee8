"""The OJS HTTP binding: the only package that imports aiohttp."""
