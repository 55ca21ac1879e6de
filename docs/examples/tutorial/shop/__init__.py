"""The tutorial's shop: an `orders` service and a `kitchen` service."""
