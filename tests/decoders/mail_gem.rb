# Decode a message with Ruby's mail gem (Debian ruby-mail), independently of Python.
# Prints one JSON object: the Subject and the first text part, both as UTF-8.
require "json"
require "mail"

mail = Mail.read_from_string(File.binread(ARGV[0]))
part = mail.multipart? ? mail.all_parts.find { |p| !p.multipart? } : mail
text = part.decoded
text = text.encode("UTF-8") unless text.encoding == Encoding::UTF_8
puts JSON.generate({ "subject" => mail.subject.to_s, "body" => text,
                     "charset" => part.charset.to_s })
