"""Small services every layer may use: safe file publishing, owned work folders, Ray dashboard metrics."""
