"""The study's three experiments and their report.

`baseline` (experiment 1: PCA + SVC on pixels), `specialise` and `svc` (experiment 3's SVCs
on the CNN's features), `report` (tables and figures against the study's), and
`experiments` (the whole study in one command: `python -m charjax.study`).
"""
