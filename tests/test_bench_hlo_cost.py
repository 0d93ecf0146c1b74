"""The GPU benchmark's counter (``bench.hlo_cost``) on small hand-written optimized HLO.

No CUDA here: the counter reads text. Each module below is written so that its FLOPs,
bytes and kernel launches can be worked out by hand (the arithmetic is in the comments).
"""

# ruff: noqa: E501 (HLO text keeps its long lines)

from __future__ import annotations

import pytest

from bench import hlo_cost

# An 8x16 float32 array is 512 bytes and 128 elements.
FUSED_ADD = """
%fused_add (p0: f32[8,16], p1: f32[8,16]) -> f32[8,16] {
  %p0 = f32[8,16]{1,0} parameter(0)
  %p1 = f32[8,16]{1,0} parameter(1)
  ROOT %add.1 = f32[8,16]{1,0} add(%p0, %p1)
}

%fused_inc (q0: s32[]) -> s32[] {
  %q0 = s32[] parameter(0)
  %one = s32[] constant(1)
  ROOT %add.2 = s32[] add(%q0, %one)
}

%fused_lt (c0: s32[]) -> pred[] {
  %c0 = s32[] parameter(0)
  %five = s32[] constant(5)
  ROOT %lt = pred[] compare(%c0, %five), direction=LT
}

%cond (ct: (s32[], f32[8,16])) -> pred[] {
  %ct = (s32[], f32[8,16]{1,0}) parameter(0)
  %ci = s32[] get-tuple-element(%ct), index=0
  ROOT %keep = pred[] fusion(%ci), kind=kLoop, calls=%fused_lt
}

%body (t: (s32[], f32[8,16])) -> (s32[], f32[8,16]) {
  %t = (s32[], f32[8,16]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %v = f32[8,16]{1,0} get-tuple-element(%t), index=1
  %sum = f32[8,16]{1,0} fusion(%v, %v), kind=kLoop, calls=%fused_add
  %next = s32[] fusion(%i), kind=kLoop, calls=%fused_inc
  ROOT %r = (s32[], f32[8,16]{1,0}) tuple(%next, %sum)
}
"""


def _loop_module(backend_config: str) -> str:
    return (
        "HloModule loop, entry_computation_layout={(f32[8,16]{1,0})->f32[8,16]{1,0}}\n"
        + FUSED_ADD
        + f"""
ENTRY %main (x: f32[8,16], w: f32[2,4,3,3], a: f32[2,4,5,5]) -> (f32[8,16], f32[2,2,5,5]) {{
  %x = f32[8,16]{{1,0}} parameter(0), metadata={{op_name="x"}}
  %w = f32[2,4,3,3]{{3,2,1,0}} parameter(1)
  %a = f32[2,4,5,5]{{3,2,1,0}} parameter(2)
  %zero = s32[] constant(0)
  %init = (s32[], f32[8,16]{{1,0}}) tuple(%zero, %x)
  %loop = (s32[], /*index=1*/f32[8,16]{{1,0}}) while(%init), condition=%cond, body=%body{backend_config}
  %acc = f32[8,16]{{1,0}} get-tuple-element(%loop), index=1
  %conv = (f32[2,2,5,5]{{3,2,1,0}}, u8[1024]{{0}}) custom-call(%a, %w), window={{size=3x3 pad=1_1x1_1}}, dim_labels=bf01_oi01->bf01, custom_call_target="__cudnn$convForward", backend_config={{"cudnn_conv_backend_config":{{"activation_mode":"kNone"}}}}
  %y = f32[2,2,5,5]{{3,2,1,0}} get-tuple-element(%conv), index=0
  ROOT %out = (f32[8,16]{{1,0}}, f32[2,2,5,5]{{3,2,1,0}}) tuple(%acc, %y)
}}
"""
    )


# The cuDNN forward convolution: output (2, 2, 5, 5) = 100 elements, each 4 input channels
# x 9 taps = 36 multiply-adds: 7200 FLOPs. Bytes: input 800 + kernel 288 + output 400,
# without the u8[1024] workspace.
CONV_FLOPS, CONV_BYTES = 7200, 800 + 288 + 400
# One trip: the add (128 FLOPs; reads 512 twice, writes 512) and the counter (1 FLOP, 4 + 4).
TRIP_FLOPS, TRIP_BYTES, TRIP_KERNELS = 129, 3 * 512 + 8, 2


def test_a_known_trip_count_multiplies_the_loop_body_and_skips_the_condition():
    cost = hlo_cost.count(_loop_module(', backend_config={"known_trip_count":{"n":"5"}}'))
    assert cost.kernels == 5 * TRIP_KERNELS + 1
    assert cost.flops == 5 * TRIP_FLOPS + CONV_FLOPS
    assert cost.bytes == 5 * TRIP_BYTES + CONV_BYTES
    assert cost.unknown_trips == 0 and cost.unknown_flops == 0
    assert cost.custom_calls == {"__cudnn$convForward": 1}


def test_a_loop_without_trip_count_is_counted_once_with_its_condition_and_flagged():
    cost = hlo_cost.count(_loop_module(""))
    assert cost.unknown_trips == 1
    assert cost.kernels == TRIP_KERNELS + 1 + 1  # body, the convolution, the condition
    assert cost.flops == TRIP_FLOPS + CONV_FLOPS + 1  # the compare
    assert cost.bytes == TRIP_BYTES + CONV_BYTES + 4 + 1


# A Pallas kernel through Triton: its backend config is MLIR attribute syntax with the
# kernel's IR as an escaped string holding brackets, commas and quotes.
TRITON = r"""HloModule pallas

ENTRY %main (x: f32[256,128]) -> f32[256,128] {
  %x = f32[256,128]{1,0} parameter(0)
  ROOT %pallas_call.1 = f32[256,128]{1,0} custom-call(%x), custom_call_target="__gpu$xla.gpu.triton", operand_layout_constraints={f32[256,128]{1,0}}, api_version=API_VERSION_TYPED_FFI, backend_config={debug = false, grid_x = 4 : i32, grid_y = 1 : i32, grid_z = 1 : i32, ir = "ML\EFR\0D{(,}]\22\\x\"", name = "kern", num_stages = 1 : i32, num_warps = 4 : i32}
}
"""


def test_a_triton_call_is_charged_operands_plus_results_and_its_flops_are_unknown():
    cost = hlo_cost.count(TRITON)
    assert cost.kernels == 1
    assert cost.bytes == 2 * 256 * 128 * 4
    assert cost.flops == 0 and cost.unknown_flops == 1
    assert cost.custom_calls == {hlo_cost.TRITON_TARGET: 1}


def test_a_triton_call_takes_its_flops_from_the_kernels_cost_estimate():
    by_name = hlo_cost.count(TRITON, kernel_flops={"kern": 12345, "other": 1})
    assert by_name.flops == 12345 and by_name.unknown_flops == 0
    in_config = hlo_cost.count(TRITON.replace("debug = false", "flops = 777 : i64"))
    assert in_config.flops == 777 and in_config.unknown_flops == 0


# A loop body's two typical fusions, each with a bitcast between its parameter and the
# slicing: a dynamic-slice of one 16x16 block out of four, and an in-place
# dynamic-update-slice of one block. A 16x16 float32 block is 1024 bytes; the buffer 4096.
SLICES = """HloModule slices

%fused_slice (s0: f32[64,16], s1: s32[]) -> f32[16,16] {
  %s0 = f32[64,16]{1,0} parameter(0)
  %s1 = s32[] parameter(1)
  %z = s32[] constant(0)
  %blocks = f32[4,16,16]{2,1,0} bitcast(%s0)
  %ds = f32[1,16,16]{2,1,0} dynamic-slice(%blocks, %s1, %z, %z), dynamic_slice_sizes={1,16,16}
  ROOT %flat = f32[16,16]{1,0} bitcast(%ds)
}

%fused_update (u0: f32[64,16], u1: f32[16,16], u2: s32[]) -> f32[64,16] {
  %u0 = f32[64,16]{1,0} parameter(0)
  %u1 = f32[16,16]{1,0} parameter(1)
  %u2 = s32[] parameter(2)
  %z = s32[] constant(0)
  %buffer = f32[4,16,16]{2,1,0} bitcast(%u0)
  %block = f32[1,16,16]{2,1,0} bitcast(%u1)
  %dus = f32[4,16,16]{2,1,0} dynamic-update-slice(%buffer, %block, %u2, %z, %z)
  ROOT %back = f32[64,16]{1,0} bitcast(%dus)
}

ENTRY %main (buf: f32[64,16], i: s32[]) -> f32[64,16] {
  %buf = f32[64,16]{1,0} parameter(0)
  %i = s32[] parameter(1)
  %piece = f32[16,16]{1,0} fusion(%buf, %i), kind=kLoop, calls=%fused_slice
  ROOT %put = f32[64,16]{1,0} fusion(%buf, %piece, %i), kind=kLoop, calls=%fused_update
}
"""


def test_slices_and_in_place_updates_are_charged_their_size_through_bitcasts():
    cost = hlo_cost.count(SLICES)
    assert cost.kernels == 2
    slice_bytes = 1024 + 4 + 1024  # the block read, the index, the block written
    update_bytes = 1024 + 4 + 1024  # the update read, the index, the block written in place
    assert cost.bytes == slice_bytes + update_bytes


COLLECTIVE = """HloModule dp

%sum (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

ENTRY %main (g: f32[1000]) -> f32[1000] {
  %g = f32[1000]{0} parameter(0)
  %start = f32[1000]{0} all-reduce-start(%g), replica_groups={{0,1,2,3,4,5,6,7}}, to_apply=%sum
  ROOT %done = f32[1000]{0} all-reduce-done(%start)
}
"""


def test_an_asynchronous_all_reduce_is_one_launch_counted_with_its_bytes():
    cost = hlo_cost.count(COLLECTIVE)
    assert cost.kernels == 1
    assert cost.collectives == {"all-reduce": [1, 4000]}
    assert cost.bytes == 4000 + 4000  # read at the start, written at the done


@pytest.mark.parametrize(
    ("shape", "expected"),
    [("f32[2,3]{1,0}", 24), ("(bf16[4], u8[0]{0}, s32[])", 12), ("pred[10]", 10)],
)
def test_shape_bytes(shape, expected):
    assert hlo_cost.nbytes(shape) == expected


def test_a_real_optimized_module_parses_and_its_dot_is_counted():
    """XLA's own text (a CPU compile here), not a hand-written one: a (32, 64) x (64, 16)
    product is 2 * 32 * 16 * 64 FLOPs."""
    import jax
    import jax.numpy as jnp

    text = (
        jax.jit(lambda a, b: jnp.tanh(a @ b))
        .lower(jnp.ones((32, 64)), jnp.ones((64, 16)))
        .compile()
        .as_text()
    )
    cost = hlo_cost.count(text)
    assert cost.flops >= 2 * 32 * 16 * 64
    assert cost.transcendentals == 32 * 16
    assert cost.kernels >= 1
    assert cost.bytes >= (32 * 64 + 64 * 16 + 32 * 16) * 4


def test_the_gpu_report_shows_a_layer_that_fails_to_compile_as_a_row():
    """``bench.gpu``'s tables from results as its JSON holds them (no compile here)."""
    from bench import gpu

    ok = {"flops": 2e9, "bytes": 4e8, "kernels": 3, "unknown_flops": 0, "temp_bytes": 2**20}
    fails = {"error": "INTERNAL: Couldn't find output tile sizes, metadata={op_name=...}"}
    results = {
        "jax": "0.10.2", "date": "2026-12-03", "gpus": ["h100_sxm"], "argv": "--suite core",
        "core": [
            {"gpu": "h100_sxm", "name": "conv a", "ours": {"fwd": ok, "bwd": ok},
             "xla": {"fwd": ok, "bwd": {**ok, "bytes": 1e8, "unknown_flops": 1}}},
            {"gpu": "h100_sxm", "name": "conv b", "ours": {"fwd": ok, "bwd": fails},
             "xla": {"fwd": ok, "bwd": ok}},
        ],
    }  # fmt: skip
    rows = {line.split(" | ")[0]: line.split(" | ") for line in gpu.render(results).splitlines()}
    assert rows["| conv a"][1] == "4.00 / 4.00+?"  # forward + backward GFLOP, XLA's unknown
    assert rows["| conv a"][3] == "**1.60**"  # 800 MB against 500 MB
    failed = rows["| conv b"]
    assert failed[1] == "- / 4.00" and failed[4] == "- / 6"
    assert (
        failed[3]
        == "**ours: backward fails to compile: INTERNAL: Couldn't find output tile sizes**"
    )


def test_the_counters_docstring_examples_hold():
    """``make test`` collects doctests from ``jspatial`` only; these are ``bench``'s."""
    import doctest

    result = doctest.testmod(hlo_cost)
    assert result.attempted >= 3 and result.failed == 0
