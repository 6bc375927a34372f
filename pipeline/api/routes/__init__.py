"""The HTTP API's routes, one router per concern; `pipeline.api.app.create_app` includes them in this order."""
