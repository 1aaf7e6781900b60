-- The class a row books as people name it ("07:00 WOD"), so `prebookd list` and
-- `prebookd cancel` can say which class a row is for; booking_data holds only
-- AimHarder's session id. A new nullable column of prebookd's own: the web app's rows
-- leave it empty, `prebookd add` fills it when it knows the class's name or time.

ALTER TABLE prebookings ADD COLUMN IF NOT EXISTS class_label text;

COMMENT ON COLUMN prebookings.class_label IS
    'the class as people name it (start time and name, "07:00 WOD"), when known';
