"""Nightly chat-model retraining. The five stages sit at the top, in lifecycle order; their helpers live in
subpackages named for what they serve (docs/layout.md has the map):

    ingest -> validate -> train -> evaluate -> promote      python -m pipeline <stage> --help

    data/        sources, cleaning, languages, the conversation table, date partitions   (ingest, validate)
    model/       loading models, the chat format, generation                              (every stage that runs a model)
    training/    the Trainer and everything around it; training/samples/: tokens and batches (train)
    evaluation/  held-out and anchor sets, metrics, similarity, perplexity, the reply cache (evaluate)
    promotion/   the gate, paired bootstrap significance, the HTML report                  (promote)
    serving/     the registered chat model (MLflow pyfunc) and its server
    storage/     stage outputs (atomic, run- and partition-scoped) and S3 directories
    tracking/    MLflow runs, the model registry, how the MLflow UI opens
    process/     what every stage process needs: allocator, termination, progress, failpoints, ports
"""
