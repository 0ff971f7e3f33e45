"""The science: what is done with the activations (t-SNE, clustering, the classifier)."""
