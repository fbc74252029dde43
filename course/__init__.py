"""Streamlit-side glue of the course that is not a page.

Lesson loading (``course.lessons``), quiz grading (``course.grading``), the
progress store (``course.progress``) and small reusable widgets
(``course.widgets``). Nothing here imports torch.
"""
