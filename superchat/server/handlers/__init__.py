"""Handlers, one module per protocol area; each exports HANDLERS: {message class: function}."""
