"""rnnlm's HTTP service (FastAPI). Imports the model package; the model package never imports this."""
