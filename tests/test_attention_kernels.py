"""Which attention kernel a forward really runs, counted at run time, and the compute dtype it gets."""

import torch

from conftest import tiny_llama
from novalign.models import attention
from novalign.models.forward import decoder_hidden_states
from novalign.models.packing import collate_packed, collate_padded

SAMPLES = [([5, 6, 7, 8, 9], [5, 6, 7, 8, 9]), ([10, 11, 12], [10, 11, 12]), ([13, 14, 15, 16], [13, 14, 15, 16])]


def _packed():
    return collate_packed(SAMPLES, [[0, 1], [2]], 8, pad_id=0)


def test_counts_follow_the_path_taken():
    """A 2-layer model: one packed forward is 2 calls of the varlen path (on CPU the exact per-sample loop,
    fp32 weights -> fp32 inputs); one padded forward goes to transformers' SDPA, 2 calls; nothing else."""
    model = tiny_llama(attn=attention.register())
    attention.reset_kernel_calls()
    with torch.no_grad():
        decoder_hidden_states(model, _packed())
    assert attention.kernel_calls(by_dtype=True) == {"sdpa_loop/float32": 2}
    with torch.no_grad():
        decoder_hidden_states(model, collate_padded(SAMPLES, pad_id=0))
    assert attention.kernel_calls() == {"sdpa_loop": 2, "hf_sdpa": 2}
    attention.reset_kernel_calls()
    assert attention.kernel_calls() == {}


def test_autocast_over_fp32_weights_reaches_the_kernel_in_bf16():
    """Under bf16 autocast over fp32 weights the q/k/v projections give bf16, but RoPE multiplies q and k by
    fp32 cos/sin and promotes them to fp32. Without a cast the varlen path would see fp32 q -- and on CUDA the
    picker would then choose the per-sample loop instead of a fused kernel. All 2 calls must arrive in bf16,
    the dtype for which the picker chooses a fused kernel on CUDA (when this torch has one)."""
    model = tiny_llama(attn=attention.register())
    attention.reset_kernel_calls()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        decoder_hidden_states(model, _packed())
    assert attention.kernel_calls(by_dtype=True) == {"sdpa_loop/bfloat16": 2}
    fused = attention._flash_varlen() is not None or attention._torch_varlen() is not None
    expected = "sdpa_loop" if not fused else ("flash_attn" if attention._flash_varlen() else "torch_varlen")
    assert attention.varlen_kernel_name(torch.device("cuda"), torch.bfloat16) == expected
    assert attention.varlen_kernel_name(torch.device("cuda"), torch.float32) == "sdpa_loop"


def test_per_sample_loop_backward_concatenates_instead_of_slice_copies():
    """The loop's output is one ``cat`` of per-sample outputs (its backward splits the gradient once), not
    copies into slices of a preallocated row (CopySlices, whose backward zero-fills a whole-row gradient
    per sample). Gradients equal those of each sample's attention computed on its own."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(9, h, 4, requires_grad=True) for h in (2, 1, 1))
    cu = torch.tensor([0, 4, 4, 9], dtype=torch.int32)  # an empty segment in the middle is allowed
    out = attention.varlen_attention(q, k, v, cu, 5, 0.5)
    assert type(out.grad_fn).__name__ == "CatBackward0"
    out.square().sum().backward()
    for a, b in ((0, 4), (4, 9)):
        qs, ks, vs = (t.detach()[a:b].clone().requires_grad_() for t in (q, k, v))
        ref = torch.nn.functional.scaled_dot_product_attention(
            qs.transpose(0, 1), ks.transpose(0, 1).repeat_interleave(2, 0), vs.transpose(0, 1).repeat_interleave(2, 0),
            is_causal=True, scale=0.5).transpose(0, 1)
        ref.square().sum().backward()
        torch.testing.assert_close(out[a:b].detach(), ref.detach())
        torch.testing.assert_close(q.grad[a:b], qs.grad)
        torch.testing.assert_close(k.grad[a:b], ks.grad)
