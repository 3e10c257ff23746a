"""The transferred SAE's error decomposition: round trip + mapped source-SAE error, exactly."""

import torch

from stitchplug.metrics import recon_metrics
from stitchplug_sae.diagnostics import transfer_error_decomposition
from stitchplug.sae.transfer import transfer_sae
from test_sae_transfer import DA, make_sae, make_stitch


def test_decomposition_matches_direct_computation():
    sae_a = make_sae("topk", apply_b_dec=True)
    stitch = make_stitch()
    sae_b = transfer_sae(sae_a, stitch, "up")
    torch.manual_seed(0)
    h = torch.randn(512, stitch.P_down.shape[0]).double() * 3 + 1
    d = transfer_error_decomposition(sae_a, sae_b, stitch, [h[:200], h[200:]], massive_b=[0])
    with torch.no_grad():
        P_up, b_up = stitch.P_up.double(), stitch.b_up.double()
        a = h @ stitch.P_down.double() + stitch.b_down.double()
        sae_out = sae_a.decode(sae_a.encode(a.float())).double()
        direct = recon_metrics(h, sae_b.decode(sae_b.encode(h.float())).double(), [0])
        rt = recon_metrics(h, a @ P_up + b_up, [0])
        err = recon_metrics(h, h + (sae_out - a) @ P_up, [0])
        on_a = recon_metrics(a, sae_out)
    assert abs(d["transferred"]["fvu"] - direct["fvu"]) < 1e-4
    assert abs(d["round_trip_only"]["fvu"] - rt["fvu"]) < 1e-9
    assert abs(d["sae_error_only"]["fvu_excl_massive"] - err["fvu_excl_massive"]) < 1e-9
    assert abs(d["source_sae_on_mapped_inputs"]["fvu"] - on_a["fvu"]) < 1e-9
    # exactness of the split: transferred output = round trip + mapped SAE error (Eq. 6)
    total = (a @ P_up + b_up) + (sae_out - a) @ P_up
    assert torch.allclose(total, sae_b.decode(sae_b.encode(h.float())).double(), atol=1e-3, rtol=1e-4)
    assert d["mapped_input_variance"] > 0 and a.shape[1] == DA
