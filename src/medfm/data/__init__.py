"""Medical data: source adapters, the pretraining corpus, its streaming reader and its data card."""
