"""Framework integrations: transformers (Hugging Face)."""
