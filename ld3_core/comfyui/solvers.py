"""ComfyUI's own ODE samplers, made differentiable without re-implementing or modifying them.

ComfyUI's k-diffusion samplers are ``@torch.no_grad()`` and call decorated siblings through module
globals; two of them also ``.detach()`` their history. We load a *grad-enabled twin* of each sampler
module: the module's own source, parsed, with the ``torch.no_grad()`` decorators and the ``.detach()``
calls removed (neither changes a forward value), compiled under the module's own file name and
package, so relative imports resolve to ComfyUI's real modules. ComfyUI's modules stay untouched.

DEIS computes its step coefficients on the CPU from detached sigmas by numerical integration; its
twin gets the coefficients from ComfyUI's own function (same values) and their Jacobian with respect
to the sigmas by central differences in float64 (see ``_DeisCoefficients``).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import types
from functools import cache

import torch

from ..errors import LD3InputError

# Deterministic ODE samplers whose sigma gradients are exact through the twin modules.
SUPPORTED_SAMPLERS: tuple[str, ...] = (
    "euler",
    "euler_cfg_pp",
    "heun",
    "heunpp2",
    "dpm_2",
    "dpmpp_2m",
    "dpmpp_2m_cfg_pp",
    "ipndm",
    "ipndm_v",
    "deis",
    "uni_pc",
    "uni_pc_bh2",
    "res_multistep",
    "res_multistep_cfg_pp",
    "gradient_estimation",
    "gradient_estimation_cfg_pp",
    "ddim",
)
# The paper's solvers (UniPC, DPM-Solver++(2M), iPNDM, Euler).
PAPER_SAMPLERS: tuple[str, ...] = ("uni_pc", "dpmpp_2m", "ipndm", "euler")


class _StripNoGradAndDetach(ast.NodeTransformer):
    """Remove ``@torch.no_grad()`` decorators, turn ``x.detach()`` into ``x`` and
    ``torch.tensor(name, ...)`` into ``_ld3_tensor(name, ...)`` (see ``_tensor_keeping_graph``)."""

    @staticmethod
    def _is_no_grad(node: ast.expr) -> bool:
        target = node.func if isinstance(node, ast.Call) else node
        return isinstance(target, ast.Attribute) and target.attr == "no_grad"

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.decorator_list = [d for d in node.decorator_list if not self._is_no_grad(d)]
        self.generic_visit(node)
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "detach" and not node.args and not node.keywords:
            return func.value
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "tensor"
            and isinstance(func.value, ast.Name)
            and func.value.id == "torch"
            and node.args
            and isinstance(node.args[0], ast.Name)
        ):
            return ast.Call(ast.Name("_ld3_tensor", ast.Load()), node.args, node.keywords)
        return node


def _tensor_keeping_graph(data, **kwargs):
    """``torch.tensor(data)`` that keeps the graph of tensor elements (same values).

    UniPC builds its step coefficients (``rks``, ``b``) as Python lists of 0-d tensors and calls
    ``torch.tensor`` on them, which copies the values and drops their dependence on the sigmas.
    """
    if isinstance(data, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in data):
        tensors = [v for v in data if isinstance(v, torch.Tensor)]
        dtype = kwargs.get("dtype") or tensors[0].dtype
        for v in tensors[1:]:
            dtype = torch.promote_types(dtype, v.dtype)
        if not dtype.is_floating_point and "dtype" not in kwargs:
            return torch.tensor(data, **kwargs)
        device = kwargs.get("device", tensors[0].device)
        return torch.stack([torch.as_tensor(v, dtype=dtype).to(device).reshape(()) for v in data])
    return torch.tensor(data, **kwargs)


@cache
def grad_twin(module_name: str) -> types.ModuleType:
    """Return a grad-enabled twin of one of ComfyUI's sampler modules (built once per process)."""
    original = importlib.import_module(module_name)
    tree = _StripNoGradAndDetach().visit(ast.parse(inspect.getsource(original)))
    ast.fix_missing_locations(tree)
    twin = types.ModuleType(f"{module_name}.__ld3_grad__")
    twin.__dict__.update(
        __file__=original.__file__,
        __package__=original.__package__,
        __builtins__=__builtins__,
        _ld3_tensor=_tensor_keeping_graph,
    )
    exec(compile(tree, original.__file__, "exec"), twin.__dict__)
    if module_name == "comfy.k_diffusion.sampling":
        twin.deis = _DeisWithGradients(original.deis)
    return twin


class _DeisCoefficients(torch.autograd.Function):
    """DEIS step coefficients: ComfyUI's values forward, a central-difference Jacobian backward."""

    @staticmethod
    def forward(ctx, sigmas, coeffs, fn, max_order, deis_mode):
        # ``coeffs`` are ComfyUI's values for ``sigmas``. The Jacobian costs 2 (N+1) more
        # integrations: computed in backward, only when one runs.
        ctx.save_for_backward(sigmas.detach())
        ctx.fn, ctx.max_order, ctx.deis_mode = fn, max_order, deis_mode
        return coeffs.to(sigmas.dtype).clone()

    @staticmethod
    def backward(ctx, grad_coeffs):
        (sigmas,) = ctx.saved_tensors
        fn, max_order, deis_mode = ctx.fn, ctx.max_order, ctx.deis_mode
        base = sigmas.to(torch.float64)
        # Relative steps: sigmas span four decades; the trailing zero gets an absolute step.
        steps = torch.where(base > 0, base * 1e-4, torch.full_like(base, 1e-7))
        cols = []
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)  # the integration grid is built in the default dtype
        try:
            with torch.no_grad():
                for k in range(base.numel()):
                    bump = torch.zeros_like(base)
                    bump[k] = steps[k]
                    plus = _flatten(fn(base + bump, max_order, deis_mode=deis_mode))
                    minus = _flatten(fn(base - bump, max_order, deis_mode=deis_mode))
                    cols.append((plus - minus) / (2 * steps[k]))
        finally:
            torch.set_default_dtype(previous)
        jacobian = torch.stack(cols, dim=1)
        # Only coefficients the sampler used: the last step's are +-inf when the schedule ends at 0
        # (ComfyUI computes them, then takes an Euler step), and 0 * inf would make every gradient NaN.
        used = grad_coeffs != 0
        grad = grad_coeffs[used].to(jacobian) @ jacobian[used]
        return grad.to(sigmas.dtype), None, None, None, None


def _flatten(coeff_list) -> torch.Tensor:
    values = [torch.as_tensor(c, dtype=torch.float64).reshape(()) for row in coeff_list for c in row]
    return torch.stack(values) if values else torch.zeros(0, dtype=torch.float64)


class _DeisWithGradients:
    """Stands in for ``comfy.k_diffusion.deis`` inside the sampling twin."""

    def __init__(self, deis_module: types.ModuleType):
        self._deis = deis_module

    def get_deis_coeff_list(self, t_steps, max_order, N=10000, deis_mode="tab"):
        def coefficients(sigmas, order, deis_mode):
            return self._deis.get_deis_coeff_list(sigmas, order, N=N, deis_mode=deis_mode)

        with torch.no_grad():
            values = coefficients(t_steps.detach(), max_order, deis_mode)
        flat = _DeisCoefficients.apply(t_steps, _flatten(values), coefficients, max_order, deis_mode)
        rows, offset = [], 0
        for row in values:
            rows.append([flat[offset + j].to(t_steps.device) for j in range(len(row))])
            offset += len(row)
        return rows

    def __getattr__(self, name):
        return getattr(self._deis, name)


# Name parts of ComfyUI's samplers that add fresh noise at every step (ancestral, SDE incl. er_sde,
# ddpm, lcm, seeds_2/3, sa_solver/_pece): they sample the SDE, not the probability-flow ODE.
STOCHASTIC_TAGS: tuple[str, ...] = ("ancestral", "sde", "ddpm", "lcm", "seeds", "sa_solver")


def is_stochastic(sampler_name: str) -> bool:
    """True for samplers that inject fresh noise, so their result is not the ODE's solution."""
    return any(tag in sampler_name for tag in STOCHASTIC_TAGS)


def check_sampler(sampler_name: str, input_name: str = "sampler_name") -> str:
    """Refuse samplers LD3 cannot train through, listing the supported ones."""
    if sampler_name not in SUPPORTED_SAMPLERS:
        kind = (
            "is stochastic (ancestral/SDE samplers inject fresh noise; LD3 learns ODE solvers)"
            if is_stochastic(sampler_name)
            else "has no usable gradient with respect to its time points"
        )
        raise LD3InputError(
            input_name,
            f"sampler '{sampler_name}' {kind}",
            f"Choose one of: {', '.join(SUPPORTED_SAMPLERS)}",
        )
    return sampler_name


def grad_sampler(sampler_name: str):
    """A ``comfy.samplers.KSAMPLER`` running ComfyUI's own sampler with gradients enabled.

    Mirrors ``comfy.samplers.sampler_object`` (including ``ddim`` = euler with random inpaint noise).
    """
    import comfy.samplers

    check_sampler(sampler_name)
    kd = grad_twin("comfy.k_diffusion.sampling")
    if sampler_name in ("uni_pc", "uni_pc_bh2"):
        unipc = grad_twin("comfy.extra_samplers.uni_pc")
        fn = unipc.sample_unipc if sampler_name == "uni_pc" else unipc.sample_unipc_bh2
        return comfy.samplers.KSAMPLER(_clone_sigmas(fn))
    if sampler_name == "ddim":
        return comfy.samplers.KSAMPLER(kd.sample_euler, inpaint_options={"random": True})
    return comfy.samplers.KSAMPLER(getattr(kd, f"sample_{sampler_name}"))


def _clone_sigmas(fn):
    """UniPC writes 0.001 into its sigmas' last entry in place: give it a copy, not the caller's.

    Stock ComfyUI then undoes the noise scaling at that mutated last sigma (``KSAMPLER.sample`` calls
    ``inverse_noise_scaling(sigmas[-1])`` on the same tensor): for flow models the output is divided by
    ``1 - 0.001``. We apply it here, so training sees exactly what users get; the sampler's own call
    at the untouched sigma 0 is then the identity for every ComfyUI model type.
    """

    def sampler_function(model, noise, sigmas, *args, **kwargs):
        x = fn(model, noise, sigmas.clone(), *args, **kwargs)
        if bool(sigmas[-1] == 0):
            model_sampling = model.inner_model.inner_model.model_sampling
            x = model_sampling.inverse_noise_scaling(sigmas.new_tensor(0.001), x)
        return x

    return sampler_function


def stock_sampler(sampler_name: str):
    """ComfyUI's stock (no-grad) sampler object for the same name."""
    import comfy.samplers

    return comfy.samplers.sampler_object(sampler_name)
