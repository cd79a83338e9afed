"""What the script does, seen through PyTorch's own hooks: each optimizer step (global step pre and
post hooks), each forward of its model (a global forward hook until the model is known, then one
on the model alone), the tensor `backward()` is called on, and a DataLoader's next batch.

Nothing here copies to the host or syncs with a GPU: the hooks keep references, and the session
turns them into records. Nothing kept changes what the script would free: a forward's tensors are
kept detached (its autograd graph, the activations, goes when the script lets it go), the DataLoader
iteration by a weak reference (its worker processes end when the script's loop ends).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.nn.modules.module import register_module_forward_hook
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.data.dataloader import _BaseDataLoaderIter

from vae_tui.hooked.reduction import summed_over_batch
from vae_tui.models.outputs import fields_of, parts, posterior_parts

StepHook = Callable[[torch.optim.Optimizer], None]


@dataclass
class Forward:
    """One forward of a module: its first tensor argument and the tensors it returned, detached."""

    inputs: torch.Tensor | None
    output: Any
    grad: bool  # autograd was recording: a training forward, not an evaluation


class Probes:
    def __init__(self, before_step: StepHook, after_step: StepHook) -> None:
        self.model: torch.nn.Module | None = None
        self.last: Forward | None = None  # the model's latest forward, training or not
        self.trained: Forward | None = None  # its latest forward with autograd on, since the last step
        self.loss: torch.Tensor | None = None  # what backward() was called on since the last step
        self._iterator: weakref.ref[_BaseDataLoaderIter] | None = None  # the DataLoader iteration that gave the latest batch
        self.batch: Any = None  # and that batch
        self.summed: bool | None = None  # the loss is summed over the batch (reduction.py); read at the first backward()
        self._read_loss = True
        self._latest: Forward | None = None  # the latest forward of any module watched
        self._seen: dict[int, tuple[weakref.ref[torch.nn.Module], Forward]] = {}  # every module, until the model is known
        self._scaled: tuple[torch.Tensor, torch.Tensor] | None = None  # GradScaler's (scaled, loss)
        self._handles = [
            register_optimizer_step_pre_hook(lambda opt, args, kwargs: before_step(opt)),
            register_optimizer_step_post_hook(lambda opt, args, kwargs: after_step(opt)),
            register_module_forward_hook(self._any_forward),
        ]
        self._patched: list[tuple[Any, str, Any]] = []
        self._patch(torch.autograd, "backward", self._backward)
        self._patch(_BaseDataLoaderIter, "__next__", self._next)
        self._patch(torch.amp.GradScaler, "scale", self._scale)

    def remove(self) -> None:
        """The script as it was: every hook removed and every patched function put back."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for owner, name, original in reversed(self._patched):
            if original is None:
                owner.__dict__.pop(name, None)
            else:
                setattr(owner, name, original)
        self._patched.clear()
        self._seen.clear()

    def _patch(self, owner: Any, name: str, make: Callable[[Any], Any], instance: bool = False) -> None:
        """`owner.name` replaced by `make(original)`; on an instance, the wrapper is its own attribute, deleted on removal."""
        original = getattr(owner, name)
        self._patched.append((owner, name, None if instance else original))
        setattr(owner, name, make(original))

    # -- the model -------------------------------------------------------------------------------
    @property
    def iterator(self) -> _BaseDataLoaderIter | None:
        """The DataLoader iteration that gave the latest batch, while the script still holds it."""
        return self._iterator() if self._iterator is not None else None

    def _any_forward(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        forward = _forward(args, output)
        self._seen[id(module)] = (weakref.ref(module), forward)
        self._latest = forward  # the outermost module's comes last: the model's, until the model is known

    def _model_forward(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        forward = _forward(args, output)
        self.last = self._latest = forward
        if forward.grad:
            self.trained = forward

    def model_of(self, optimizer: torch.optim.Optimizer) -> tuple[torch.nn.Module | None, Forward | None]:
        """Of the modules that ran since the hooks came, the one holding most of the parameters `optimizer`
        steps, the smallest such (the script's own class, not a wrapper around it), and its last forward."""
        stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
        best: tuple[int, int] = (0, 0)
        found: tuple[torch.nn.Module | None, Forward | None] = (None, None)
        for ref, forward in self._seen.values():
            module = ref()
            if module is None:
                continue
            params = list(module.parameters())
            held = sum(id(p) in stepped for p in params)
            if held and (held, -len(params)) > best:
                best, found = (held, -len(params)), (module, forward)
        return found

    def watch(self, model: torch.nn.Module | None, forward: Forward | None) -> None:
        """From now on only `model`'s forwards are hooked (a forward hook on every module costs each call)."""
        self.model = model
        self.last = forward
        self.trained = forward if forward is not None and forward.grad else None
        for handle in self._handles[2:]:
            handle.remove()
        del self._handles[2:]
        self._seen.clear()
        if model is not None:
            self._handles.append(model.register_forward_hook(self._model_forward))

    def watch_encode_decode(self, model: torch.nn.Module) -> None:
        """A model trained through its `encode` and `decode` (diffusers' AutoencoderKL: `encode(x).latent_dist`,
        `decode(z).sample`), whose forward never runs: the two are wrapped on this one instance, and each
        decode after an encode makes one forward of input, posterior and reconstruction."""
        self.watch(None, None)
        self.model = model
        encoded: list[Any] = [None]

        def encode(original: Callable[..., Any]) -> Callable[..., Any]:
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                out = original(*args, **kwargs)
                inputs = next((a for a in args if isinstance(a, torch.Tensor)), None)
                encoded[0] = (None if inputs is None else inputs.detach(), _detached(out))
                return out

            return wrapped

        def decode(original: Callable[..., Any]) -> Callable[..., Any]:
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                out = original(*args, **kwargs)
                if encoded[0] is not None:
                    inputs, posterior = encoded[0]
                    recon = _detached(out)
                    recon = recon if isinstance(recon, torch.Tensor) else next((t for _, t in parts(recon)), None)
                    latent = {name.replace("'", ""): t for name, t in parts(posterior)}
                    self._model_forward(model, (inputs,), {"reconstruction": recon, **latent})
                return out

            return wrapped

        self._patch(model, "encode", encode, instance=True)
        self._patch(model, "decode", decode, instance=True)

    # -- the loss and the data -------------------------------------------------------------------
    def _backward(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(tensors, torch.Tensor) and tensors.numel() == 1:
                scaled = self._scaled
                loss = scaled[1] if scaled is not None and scaled[0] is tensors else tensors
                if self._read_loss:  # once, while its graph is still there
                    self._read_loss = False
                    self.summed = summed_over_batch(loss, _batch_size(self.batch) or _batch_size(self._latest and self._latest.inputs))
                loss = loss.detach()
                self.loss = loss if self.loss is None else self.loss + loss  # several backward()s: their sum
            return original(tensors, *args, **kwargs)

        return backward

    def _scale(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def scale(scaler: Any, outputs: Any) -> Any:
            scaled = original(scaler, outputs)
            if isinstance(outputs, torch.Tensor):
                self._scaled = (scaled, outputs)  # backward() of the scaled loss records the loss itself
            return scaled

        return scale

    def _next(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def __next__(iterator: _BaseDataLoaderIter) -> Any:
            batch = original(iterator)
            self._iterator, self.batch = weakref.ref(iterator), batch
            return batch

        return __next__

    def take(self) -> tuple[Forward | None, torch.Tensor | None]:
        """The step's training forward and loss, leaving none for the next step."""
        taken = self.trained, self.take_loss()
        self.trained = None
        return taken

    def take_loss(self) -> torch.Tensor | None:
        """What backward() was called on since any optimizer's last step: this optimizer's loss (a second
        optimizer's loss is its own, never added to the model's)."""
        loss, self.loss, self._scaled = self.loss, None, None
        return loss


def _batch_size(batch: Any) -> int:
    """The images in a DataLoader's batch: its (first) tensor's first dimension; 0 when not known."""
    data = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    return data.shape[0] if isinstance(data, torch.Tensor) and data.ndim else 0


def _forward(args: tuple[Any, ...], output: Any) -> Forward:
    inputs = next((arg for arg in args if isinstance(arg, torch.Tensor)), None)  # this runs every forward: kept plain
    return Forward(None if inputs is None else inputs.detach(), _detached(output), torch.is_grad_enabled())


def _detached(output: Any, depth: int = 0) -> Any:
    """The output's tensors (in a tuple, a list, a dict or a dataclass, one level deep; a posterior object's
    mean and spread), detached from the graph; anything else left out (it could hold the graph)."""
    if isinstance(output, torch.Tensor):
        return output.detach()
    fields = fields_of(output)
    if fields is not None and depth < 2:
        kept = {k: _detached(v, depth + 1) for k, v in fields.items()}
        return {k: v for k, v in kept.items() if v is not None}
    posterior = posterior_parts(output)
    if posterior is not None:
        return {k: v.detach() for k, v in posterior.items()}
    if isinstance(output, (tuple, list)) and depth < 2:
        return tuple(_detached(item, depth + 1) if isinstance(item, (tuple, list, torch.Tensor)) else None for item in output)
    return None
