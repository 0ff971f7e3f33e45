"""The stages: one module per `introspect <stage>`; the only code that reads the pipeline config."""
