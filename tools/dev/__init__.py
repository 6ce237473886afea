"""Developer generators: what writes the pack's own generated files (the help pages and the README's node
table, the example workflows' UI twins and thumbnails, the recorded core node specs). Users' command lines
live one folder up, in tools/."""
