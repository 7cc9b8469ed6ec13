"""Ray Serve application: BatchedClassifier, ResultStore and the Starlette Ingress."""
