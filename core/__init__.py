"""Foundations every layer uses: option checks, feature settings, splits, ranking and
progress bars. No TensorFlow, h5py or gRPC here."""
