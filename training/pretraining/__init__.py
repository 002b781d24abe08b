"""Pre-training without labels: the convolutional autoencoder / VAE whose encoder initialises a backbone."""
