"""Utilities every layer may use: local names that never leave the machine, lazy exports, usage errors, mappings given
as JSON arguments, the articles of messages, and the one module that touches private members of the libraries hfkd
builds on."""
