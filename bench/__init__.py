"""stafet's end-to-end benchmark (issue #5): ``python -m bench.run``; see bench/README.md."""
