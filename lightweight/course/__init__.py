"""The course's own tooling, around the techniques.

- ``checks``  exercise checks with Vietnamese feedback, one module per chapter
- ``labs``    ``python -m lightweight.course.labs``: generates labs/ from solutions/
- ``grade``   ``python -m lightweight.course.grade``: grades submitted labs
"""
