"""The stores: where checkpoint files live, one module per kind of place (the Hugging Face
Hub: hub.py, its cache as the local tier: hub_cache.py). Locations become stores in
flashtensors/locations.py."""
