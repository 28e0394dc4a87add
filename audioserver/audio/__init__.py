"""Audio: decoding, steps, pipelines, analysis and encoding. Knows nothing of Flask or Socket.IO."""
