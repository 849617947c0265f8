"""Make XTuner fine-tuning data from a folder of domain text: incremental-pretraining
chunks, and question/answer conversations grounded by a RAG server."""
