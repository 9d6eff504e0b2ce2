"""The wsup supervisor process, its command-line interface and the bootstrap that runs inside each worker."""
