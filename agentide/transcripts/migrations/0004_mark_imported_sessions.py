"""Flag the sessions made by earlier imports, and unlink their events from users.

Earlier imports linked a transcript's actor names to this team's users of the same name. The
events an import wrote are those dated before the import (later comments are native); their
actor becomes the recorded name again, as plain text.
"""

from django.db import migrations


def mark_imported(apps, schema_editor):
    TranscriptImport = apps.get_model("transcripts", "TranscriptImport")
    Session = apps.get_model("notebook", "Session")
    Event = apps.get_model("notebook", "Event")
    Cell = apps.get_model("notebook", "Cell")
    Annotation = apps.get_model("transcripts", "Annotation")
    for record in TranscriptImport.objects.all().iterator():
        Session.objects.filter(pk=record.session_id).update(imported=True)
        events = Event.objects.filter(
            session_id=record.session_id, created_at__lte=record.imported_at
        ).select_related("actor")
        changed = []
        imported_seqs = []
        for event in events.iterator(chunk_size=1000):
            payload = dict(event.payload)
            if event.actor_id is not None:
                payload["_actor"] = event.actor.username
            payload["_imported"] = True
            event.payload = payload
            event.actor = None
            changed.append(event)
            imported_seqs.append(event.seq)
        Event.objects.bulk_update(changed, ["payload", "actor"], batch_size=1000)
        Cell.objects.filter(
            session_id=record.session_id, created_at__lte=record.imported_at
        ).update(author=None)
        Annotation.objects.filter(session_id=record.session_id, seq__in=imported_seqs).update(
            author=None
        )


class Migration(migrations.Migration):
    dependencies = [
        ("transcripts", "0003_fork_status"),
        ("notebook", "0003_session_imported"),
    ]

    operations = [migrations.RunPython(mark_imported, migrations.RunPython.noop)]
