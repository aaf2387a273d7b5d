"""The human-preference study of Appendix B.4: pairs of images (SIM's one step vs the teacher), a web page per
rater, answers in a database, and the win rate with its Wilson interval for Table 3.

``build.py`` writes a study folder, ``db.py`` holds the schema, ``server.py`` the web application,
``results.py`` reads the answers; ``python -m workflow.study`` runs them.
"""
