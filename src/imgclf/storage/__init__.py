"""Where data and models are stored: the local S3 server for DVC."""
