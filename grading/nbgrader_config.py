# nbgrader configuration for running minibayeslora as a graded course (see INSTRUCTORS.md).
# `make grading` builds a course directory in build/course with this file and one assignment per
# solutions notebook (source/01_lora/01_lora_exercises.ipynb, ...).
c = get_config()  # noqa: F821 (nbgrader provides it)

c.CourseDirectory.course_id = "minibayeslora"
# The stubs our exercises/ notebooks use, so that nbgrader's release equals them cell for cell.
c.ClearSolutions.code_stub = {"python": "raise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
# Exercise notebooks load MiniLM and train for a few steps: allow minutes per cell, not nbgrader's 30 s.
c.Execute.timeout = 900
# Students' notebooks run in the smoke profile when graded unless the grader's environment says otherwise
# (set MINIBAYESLORA_SMOKE=1 before `nbgrader autograde`, as our tests do).
