"""User-facing errors: every message names the input, what was wrong and what to do."""


class LD3InputError(ValueError):
    """A problem with something the user supplied, phrased as "<input>: <problem>. <fix>"."""

    def __init__(self, input_name: str, problem: str, fix: str):
        self.input_name = input_name
        self.problem = problem
        self.fix = fix
        super().__init__(f"{input_name}: {problem.rstrip('.')}. {fix}")

    def __reduce__(self):
        # ValueError pickles only .args; keep the three fields so the error survives multiprocessing.
        return (type(self), (self.input_name, self.problem, self.fix))
