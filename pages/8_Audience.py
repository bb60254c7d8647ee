"""Audience mode: a QR code and a join code; phones send photos; each model votes on the big screen."""
import time
from pathlib import Path

import streamlit as st

from cifar_core import audience, ui
from cifar_core.errors import CifarError

ui.page("Audience mode", "📱")
if not audience.enabled():
    st.info("Audience mode is off. To let the room send photos from their phones, start the dashboard with "
            "`streamlit run streamlit_app.py -- --audience` (optionally `--audience-port 8502`). Phones then reach "
            "only a small upload page, with the join code shown here; the dashboard itself stays on this laptop.")
    st.stop()

server = ui.audience_server()
if server is None:
    st.write("Open the room to show a QR code and a join code. Photos are kept in memory only, and "
             "forgotten when the dashboard stops, unless you save them.")
    if st.button("Open the room", type="primary", key="audience_open"):
        try:
            ui.open_audience_room()
        except CifarError as exc:
            ui.fail(exc)
            st.stop()
        st.rerun()
    st.stop()

room = server.room
left, right = st.columns([1, 2])
left.image(audience.qr_png(server.join_url()), width=260)
right.markdown(f"### Join code: `{room.code}`\nScan the code, or open **{server.join_url()}** on a phone "
               "on the same network.")
voters = ui.pick_runs("Models voting", key="audience_runs", multiple=True, default_count=2, with_model=True)
save_to = right.text_input("Save the gallery to", value=str(Path.home() / f"studio-audience-{time.strftime('%Y%m%d')}"),
                           key="audience_save_to")
save, close = right.columns(2)
if save.button("Save the gallery", key="audience_save"):
    try:
        st.success(f"Saved {room.save(Path(save_to).expanduser())} photo(s) to {save_to}")
    except OSError as exc:
        st.error(f"Could not save to {save_to}: {exc}")
if close.button("Close the room", key="audience_close"):
    if room.unsaved():
        st.session_state["audience_confirm_close"] = True  # the next run asks before anything is lost
    else:
        ui.close_audience_room()
        st.rerun()
unsaved = room.unsaved()
if st.session_state.get("audience_confirm_close") and not unsaved:
    st.session_state["audience_confirm_close"] = False  # saved meanwhile: nothing left to lose
if st.session_state.get("audience_confirm_close"):
    right.warning(f"{unsaved} photo(s) are not saved; closing the room forgets them. Save the gallery first, "
                  "or close anyway.")
    discard, keep = right.columns(2)
    if discard.button(f"Close and forget {unsaved} photo(s)", key="audience_discard"):
        st.session_state["audience_confirm_close"] = False
        ui.close_audience_room()
        st.rerun()
    if keep.button("Keep the room open", key="audience_keep"):
        st.session_state["audience_confirm_close"] = False
        st.rerun()


@st.fragment(run_every=2)
def gallery() -> None:
    photos = room.photos()
    st.caption(f"{len(photos)} photo(s) from the room, newest first (at most {audience.MAX_GALLERY} are kept)")
    for record in voters:
        unvoted = [photo for photo in photos if record["run"] not in photo.votes]
        if not unvoted:
            continue
        try:  # each model reads all new photos in one call
            reading = ui.read_photos(record["path"], [photo.image for photo in unvoted])
        except CifarError as exc:
            st.error(f"{record['run']}: {exc}")
            continue
        for photo, probs in zip(unvoted, reading.probabilities, strict=True):
            best = int(probs.argmax())
            photo.votes[record["run"]] = (reading.class_names[best], float(probs[best]))
    columns = st.columns(4)
    for position, photo in enumerate(photos):
        votes = [f"{record['model']}: {photo.votes[record['run']][0]} ({photo.votes[record['run']][1]:.0%})"
                 for record in voters if record["run"] in photo.votes]
        columns[position % 4].image(photo.image, caption=f"#{photo.number} · " + " · ".join(votes), width="stretch")


gallery()
