"""The CDS Hooks 2.0 contract: wire models, request decoding and parsing, the OpenAPI document. No Flask."""
