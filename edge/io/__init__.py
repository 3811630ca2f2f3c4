"""Everything that crosses the device's edge: URIs, decoding, sources in, outputs out."""
