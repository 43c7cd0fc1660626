"""Event now belongs to the event log app (events.0001 took it over): forget it here, in
state only; the table ``notebook_event`` stays.

Runs after transcripts.0004, whose data migration still reads ``notebook.Event``.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("notebook", "0003_session_imported"),
        ("events", "0001_initial"),
        ("transcripts", "0004_mark_imported_sessions"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="Event")],
            database_operations=[],
        ),
    ]
