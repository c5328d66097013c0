"""Directory-scale batches on Ray Data: thousands of photos from a folder or an object-store prefix (`avatar batch`)."""
